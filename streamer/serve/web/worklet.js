// Audio thread: float32 render quanta in, 16-bit PCM chunks out (to the page, transferred).
// Runs at the AudioContext's rate (16 kHz when the browser honours the request); the page
// tells the server whatever rate it really is, and the server resamples.

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = (options.processorOptions && options.processorOptions.chunkMs) || 40;
    this.size = Math.max(128, Math.round((sampleRate * chunkMs) / 1000));
    this.buffer = new Int16Array(this.size);
    this.filled = 0;
    this.peak = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const channels = input.length;
      const n = input[0].length;
      for (let i = 0; i < n; i++) {
        let x = 0;
        for (let c = 0; c < channels; c++) x += input[c][i];
        x /= channels;
        if (x > 1) x = 1;
        else if (x < -1) x = -1;
        const a = x < 0 ? -x : x;
        if (a > this.peak) this.peak = a;
        this.buffer[this.filled++] = x < 0 ? x * 32768 : x * 32767;
        if (this.filled === this.size) this.flush();
      }
    }
    return true; // keep running while the page holds the node
  }

  flush() {
    const pcm = this.buffer.buffer;
    this.port.postMessage({ pcm, peak: this.peak }, [pcm]);
    this.buffer = new Int16Array(this.size);
    this.filled = 0;
    this.peak = 0;
  }
}

registerProcessor("pcm-capture", PcmCapture);
