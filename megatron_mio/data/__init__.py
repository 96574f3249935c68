"""MIO data: JSONL samples -> templates -> indexed datasets -> packed, document-masked batches.

Modules, in the order data flows through them:

- ``schema``, ``templates``, ``splitting``, ``sample_types``: the fields of a sample, what
  templates are built from, how a long sample is cut, and one class per sample type holding its
  parse / render / cut / speech rules;
- ``preprocess`` (the driver), ``input_ranges`` (shards and worker tasks), ``line_processing``
  (a line -> a typed result -> documents), ``preprocess_report`` (``P.report.json``, typed),
  ``prefix_lock``, ``progress``, ``indexed``: samples to token ids and loss masks, written as
  megatron-core indexed datasets (``P.bin/.idx`` + ``P.loss_mask.bin/.idx``).
- ``validate``, ``packing``, ``packed_dataset``, ``mixture``, ``sampler``: the C++ packing and
  blending indices, packed items, stage mixtures and the resumable data-parallel loader.
- ``batch``: the packed batch contract the model consumes.
- ``synthetic``: a small sample corpus of every data type for tests, benchmarks and the quickstart.
"""
