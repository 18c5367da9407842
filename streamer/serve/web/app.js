// Live captions: microphone → AudioWorklet → 16-bit PCM over /v1/stream → captions and intents.
// While an utterance is spoken its line shows the server's partial transcript (stable words, then
// a dimmed tail that may still change); the final utterance replaces it. No build step, no
// dependencies. Page parameters: ?token=T (sent as the token query parameter of every request),
// ?stream=NAME (default browser-XXXXXX), ?models=a,b (default: all).

const CHUNK_MS = 40; // audio per WebSocket frame
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000]; // reconnect delays, the last one repeats
const MAX_BUFFERED_BYTES = 1 << 20; // a stalled socket drops audio rather than queue it forever
const MAX_UNSENT_MS = 2000; // audio kept while not connected (the first words after Start, the
// moments before a reconnect), sent as soon as the stream is live; anything older is dropped
const MAX_CAPTIONS = 200;

const params = new URLSearchParams(location.search);
const token = params.get("token");
const streamName = params.get("stream") || "browser-" + Math.random().toString(36).slice(2, 8);
const models = params.get("models");

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"), stop: $("stop"), state: $("state"), level: $("level"), info: $("info"),
  captions: $("captions"), empty: $("empty"), stats: $("stats"), error: $("error"),
};

const audio = { ctx: null, stream: null, node: null, rate: 16000 };
const conn = {
  ws: null, live: false, attempt: 0, timer: null,
  sent: 0, // samples sent on this connection: the server's stream clock starts at 0 with it
  marks: [], // [samples sent so far, performance.now()] after each frame: when audio left
};
const totals = { sent: 0, dropped: 0, utterances: 0 };
const unsent = { chunks: [], samples: 0 }; // captured while not connected, oldest first
let running = false;
// partial transcripts are asked for until the server refuses them (no ctc model among the
// stream's models); the stream then starts again without them
let wantPartial = true;

function url(path, scheme) {
  const u = new URL(path, location.href);
  if (scheme) u.protocol = scheme;
  if (token) u.searchParams.set("token", token);
  return u.href;
}

function setState(state, text) {
  document.body.dataset.state = state;
  ui.state.textContent = text || state;
}

function showError(text) {
  ui.error.textContent = text;
}

// ---------------------------------------------------------------- microphone

async function start() {
  running = true;
  ui.start.disabled = true;
  ui.stop.disabled = false;
  showError("");
  try {
    // the capture graph is ready before the microphone opens, so its first words are not missed
    audio.ctx = new AudioContext({ sampleRate: 16000 });
    audio.rate = audio.ctx.sampleRate; // 16000 unless the browser refused; the server resamples
    await audio.ctx.audioWorklet.addModule(url("worklet.js"));
    audio.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
    const source = audio.ctx.createMediaStreamSource(audio.stream);
    audio.node = new AudioWorkletNode(audio.ctx, "pcm-capture", { processorOptions: { chunkMs: CHUNK_MS } });
    audio.node.port.onmessage = (e) => onChunk(e.data);
    const mute = audio.ctx.createGain();
    mute.gain.value = 0; // connected to the output so the browser keeps pulling the graph
    source.connect(audio.node).connect(mute).connect(audio.ctx.destination);
    await audio.ctx.resume();
  } catch (err) {
    setState("error", "no microphone");
    showError("microphone: " + (err && err.message ? err.message : err));
    stopAudio();
    resetButtons();
    running = false;
    return;
  }
  connect();
}

function stopAudio() {
  if (audio.stream) audio.stream.getTracks().forEach((t) => t.stop());
  if (audio.ctx) audio.ctx.close();
  audio.stream = audio.ctx = audio.node = null;
  ui.level.value = 0;
}

function resetButtons() {
  ui.start.disabled = false;
  ui.stop.disabled = true;
}

function stop() {
  running = false;
  clearTimeout(conn.timer);
  stopAudio();
  // a live stream sent it all when it started; audio still kept never reached a stream
  totals.dropped += unsent.samples;
  unsent.chunks = [];
  unsent.samples = 0;
  showTotals();
  resetButtons();
  if (conn.ws && conn.live) {
    conn.ws.send(JSON.stringify({ type: "end" })); // the server sends what is pending, then closes
    setState("stopping");
  } else {
    if (conn.ws) conn.ws.close();
    setState("idle");
  }
}

function onChunk({ pcm, peak }) {
  ui.level.value = peak;
  const n = pcm.byteLength / 2;
  const ws = liveSocket();
  if (!ws) {
    // not connected yet (or any more): keep the last MAX_UNSENT_MS, sent when "started" arrives
    unsent.chunks.push(pcm);
    unsent.samples += n;
    while (unsent.samples > (MAX_UNSENT_MS / 1000) * audio.rate) {
      const old = unsent.chunks.shift().byteLength / 2;
      unsent.samples -= old;
      totals.dropped += old;
    }
  } else if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
    totals.dropped += n; // a stalled socket: captions are live, audio is not queued forever
  } else {
    send(ws, pcm);
  }
  showTotals();
}

/** The connection's socket while its stream is live and open, else null. */
function liveSocket() {
  const ws = conn.ws;
  return conn.live && ws && ws.readyState === WebSocket.OPEN ? ws : null;
}

function send(ws, pcm) {
  const n = pcm.byteLength / 2;
  ws.send(pcm);
  conn.sent += n;
  totals.sent += n;
  conn.marks.push([conn.sent, performance.now()]);
  if (conn.marks.length > 3000) conn.marks.splice(0, 1000);
}

/** Send the audio captured before the stream went live, oldest first. */
function flushUnsent() {
  const ws = liveSocket();
  if (!ws) return;
  for (const pcm of unsent.chunks) send(ws, pcm);
  unsent.chunks = [];
  unsent.samples = 0;
}

function showTotals() {
  document.body.dataset.samplesSent = String(totals.sent);
  document.body.dataset.samplesDropped = String(totals.dropped);
  ui.stats.textContent =
    `stream ${streamName} · ${audio.rate} Hz · sent ${(totals.sent / audio.rate).toFixed(1)} s` +
    (totals.dropped ? ` · not sent ${(totals.dropped / audio.rate).toFixed(1)} s` : "") +
    ` · ${totals.utterances} utterance(s)`;
}

/** When (performance.now()) the audio at stream time ``ms`` left for the server, or null. */
function sentAt(ms) {
  const sample = (ms / 1000) * audio.rate;
  for (const [upTo, t] of conn.marks) {
    if (upTo >= sample) return t - ((upTo - sample) / audio.rate) * 1000;
  }
  return null;
}

// ---------------------------------------------------------------- connection

function connect() {
  clearTimeout(conn.timer);
  Object.assign(conn, { live: false, sent: 0, marks: [], withoutPartial: false });
  if (!conn.attempt) setState("connecting");
  const ws = new WebSocket(url("/v1/stream", location.protocol === "https:" ? "wss:" : "ws:"));
  ws.binaryType = "arraybuffer";
  conn.ws = ws;
  ws.onopen = () => {
    const msg = { type: "start", sample_rate: audio.rate, encoding: "pcm_s16le", channels: 1, stream: streamName };
    if (models) msg.models = models.split(",");
    if (wantPartial) msg.want = ["partial"];
    ws.send(JSON.stringify(msg));
  };
  ws.onmessage = (e) => {
    if (typeof e.data === "string") onEvent(JSON.parse(e.data));
  };
  ws.onclose = (e) => {
    if (conn.ws !== ws) return;
    conn.ws = null;
    conn.live = false;
    if (!running) setState("idle");
    else if (conn.withoutPartial) connect(); // refused partials: at once, not as a failure
    else reconnect(e);
  };
}

function reconnect(e) {
  const base = BACKOFF_MS[Math.min(conn.attempt, BACKOFF_MS.length - 1)];
  const delay = base * (0.8 + 0.4 * Math.random());
  conn.attempt += 1;
  const why = e.code && e.code !== 1006 ? ` (closed ${e.code}${e.reason ? ": " + e.reason : ""})` : "";
  setState("reconnecting", `reconnecting in ${(delay / 1000).toFixed(1)} s${why}`);
  conn.timer = setTimeout(connect, delay);
}

function onEvent(ev) {
  switch (ev.type) {
    case "started":
      conn.live = true;
      conn.attempt = 0;
      setState("live");
      flushUnsent();
      ui.info.textContent = ev.models.map((m) => m.name).join(" + ");
      break;
    case "speech_started":
      captionFor(ev.utterance_id).classList.add("listening");
      break;
    case "partial":
      showPartial(ev);
      break;
    case "utterance":
      showUtterance(ev);
      break;
    case "error":
      if (refusedPartial(ev)) {
        wantPartial = false;
        conn.withoutPartial = true; // the server closes the connection next
        break;
      }
      showError(`${ev.code}: ${ev.message}`);
      if (ev.utterance_id) {
        const li = captionFor(ev.utterance_id);
        li.classList.remove("listening", "partial");
        li.removeAttribute("aria-busy");
        li.classList.add("failed");
        li.querySelector(".text").textContent = `(${ev.code})`;
      }
      break;
    case "ended":
      setState("idle");
      break;
  }
}

/** Whether ``ev`` refuses this stream's ``want: ["partial"]`` (none of its models is a ctc model). */
function refusedPartial(ev) {
  return wantPartial && !conn.live && ev.code === "bad_field" && ev.field === "want";
}

// ---------------------------------------------------------------- captions

function captionFor(id) {
  let li = ui.captions.querySelector(`li[data-utterance-id="${CSS.escape(id)}"]`);
  if (li) return li;
  li = document.createElement("li");
  li.className = "utt";
  li.dataset.utteranceId = id;
  li.innerHTML = '<span class="text">…</span><span class="intent"></span><span class="meta"></span>';
  ui.captions.prepend(li);
  ui.empty.hidden = true;
  while (ui.captions.children.length > MAX_CAPTIONS) ui.captions.lastElementChild.remove();
  return li;
}

/** The caption line of ``id`` if it has its final result (or failed), else null. */
function finishedCaption(id) {
  const li = ui.captions.querySelector(`li[data-utterance-id="${CSS.escape(id)}"]`);
  return li && ("seq" in li.dataset || li.classList.contains("failed")) ? li : null;
}

const words = (text) => text.split(" ").filter(Boolean);

/**
 * Show a partial transcript: the stable words (they only ever grow), then the unstable tail,
 * dimmed and hidden from screen readers (it will change). The line stays aria-busy until its
 * final result, so assistive technology reads the final text rather than every revision.
 */
function showPartial(ev) {
  if (finishedCaption(ev.utterance_id)) return; // late: the final replaced every partial
  const li = captionFor(ev.utterance_id);
  if (Number(li.dataset.revision || 0) >= ev.revision) return; // older than the one shown
  li.dataset.revision = String(ev.revision);
  const text = li.querySelector(".text");
  let stable = text.querySelector(".stable");
  const shown = stable ? words(stable.textContent) : [];
  let now = words(ev.stable_text);
  if (shown.some((w, i) => now[i] !== w)) now = shown; // stable words are never taken back
  const tailWords = words(ev.text).slice(now.length);
  if (!now.length && !tailWords.length) return; // nothing heard yet: the line keeps "…"
  if (!stable) {
    stable = document.createElement("span");
    stable.className = "stable";
    const tail = document.createElement("span");
    tail.className = "tail";
    tail.setAttribute("aria-hidden", "true");
    text.replaceChildren(stable, tail);
  }
  stable.textContent = now.join(" ");
  const gap = now.length && tailWords.length ? " " : "";
  text.querySelector(".tail").textContent = gap + tailWords.join(" ");
  li.classList.remove("listening");
  li.classList.add("partial");
  li.setAttribute("aria-busy", "true");
}

function showUtterance(ev) {
  const arrived = performance.now();
  totals.utterances += 1;
  const li = captionFor(ev.utterance_id);
  li.classList.remove("listening", "partial");
  li.removeAttribute("aria-busy"); // the final text replaces the partial's spans
  li.dataset.seq = String(ev.seq);
  const text = ev.transcript ? ev.transcript.text : "";
  li.querySelector(".text").textContent = ev.transcript ? text || "(no words)" : "";
  const intent = li.querySelector(".intent");
  if (ev.intent) {
    intent.textContent = `${ev.intent.name} ${Math.round(ev.intent.confidence * 100)}%`;
    intent.dataset.name = ev.intent.name;
    intent.classList.toggle("abstain", ev.intent.abstain);
    const labels = (ev.labels || []).map((l) => l.name).join(", ");
    if (labels) intent.title = labels;
  }
  const meta = li.querySelector(".meta");
  meta.replaceChildren();
  const span = (cls, content) => {
    const s = document.createElement("span");
    s.className = cls;
    s.textContent = content;
    meta.append(s);
    return s;
  };
  span("time", `${(ev.start_ms / 1000).toFixed(2)}–${(ev.end_ms / 1000).toFixed(2)} s`);
  const spokenAt = sentAt(ev.end_ms);
  const server = ev.latency_ms.end_of_speech_to_emit;
  const lat = span("latency", "");
  if (spokenAt !== null) {
    const ms = Math.max(0, Math.round(arrived - spokenAt));
    lat.dataset.ms = String(ms);
    lat.textContent = `${ms} ms after speech ended`;
  }
  lat.dataset.serverMs = String(server);
  lat.textContent += `${spokenAt !== null ? " · " : ""}server ${Math.round(server)} ms`;
  lat.title = "caption arrival after the last word's audio was sent; server: end of speech detected → result sent";
  if (ev.lag_ms) span("lag", `lag ${Math.round(ev.lag_ms)} ms`);
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);
if (params.has("autostart")) start();
