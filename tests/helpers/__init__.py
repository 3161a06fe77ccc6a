"""Seeded tiny builders shared by the tests, one module per topic; test modules import these and
never each other.

- ``classifier``: `BlobData` (a synthetic set a tiny CNN learns), tiny small_cnn overrides, a
  random small_cnn saved as train-classifier saves it (`tiny_classifier_dir`).
- ``clip``: `PairedShapes` (synthetic image-report pairs), a tiny report tokenizer and open_clip
  model, and that model saved in open_clip's local-dir format (`tiny_clip_dir`).
- ``diffusion``: `BlobPairs`, the train_diffusion config shrunk to seconds, tiny VAE and Stable
  Diffusion folders.
- ``lm``: a synthetic PubMed-like corpus, the train_lm config shrunk to seconds, a random tiny
  GPT-2 saved as train-lm saves it.
- ``phantom``: a tiny `PhantomIU` with a fake renderer, made-up IU reports and their .tgz.
- ``data``: copies of the dataset fixtures with seeded images written where their tables point.
- ``dicom``: realistic PACS-export DICOM files, their identifying values, a truncated JPEG 2000.
- ``hostile``: hostile and broken DICOM files (and a good pair) for the batch commands.
- ``app``: one tiny model of each kind for the teaching app, its composed config, and the app
  served on 127.0.0.1 in this process (`serve`).
- ``engine``: a tiny regression model trained through the engine; also runs as a subprocess
  (``python -m tests.helpers.engine``) for the DDP and kill-and-resume tests.
"""
