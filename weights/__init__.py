"""The shipped checkpoint, its SHA256SUMS and model card, in the package as ``codebrain_node.weights``."""
