"""Defaults the command line shows and the library uses, kept free of heavy imports so that `audit --help`,
`audit report`, `audit check` and `audit diff` start without loading torch."""

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "auto"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit
