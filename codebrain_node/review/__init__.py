"""The radiologists' web worklist: look at synthetic series beside their inputs, approve or reject them."""

from codebrain_node.review.app import create_app
from codebrain_node.review.server import ReviewServer, run_review_server

__all__ = ["ReviewServer", "create_app", "run_review_server"]
