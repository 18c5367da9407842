"""Training code for the embedded demo bundles (torch allowed here; the runtime never imports it).

``grammar`` generates voice-assistant commands with intent and room labels, ``synth`` speaks them
with espeak-ng, ``augment`` adds real noise and reverberation, ``data`` builds the corpora
(with real FSDD digits), ``train_ctc`` / ``train_intent`` train the two models, ``evaluate``
measures the exported bundles with onnxruntime and ``card`` writes their model cards.
"""
