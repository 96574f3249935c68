"""Codecs between media and MIO's discrete codes (docs/data_format.md, "Speech and image codecs").

- ``speech``: SpeechTokenizer (the ``speech`` extra): 16 kHz audio <-> a content code list and
  three timbre code lists at 50 frames per second, MIO's four kept quantizer layers.
- ``audio``: reading any audio file libsndfile reads as 16 kHz mono, writing 16 kHz wavs.
- ``image``: the interface a user's SEED-Tokenizer-2 wrapper implements (32 codes of 8,192 per
  image), loaded by ``module:Class``.

Torch and the optional packages are imported by the submodules, not here.
"""
