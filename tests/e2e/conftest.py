"""The e2e fixtures live in ``e2e_support`` (a name no other test folder uses, so the helpers import cleanly)."""

from e2e_support import make_study, orthanc, phantom_images, phantom_volumes, tiny_weights

__all__ = ["make_study", "orthanc", "phantom_images", "phantom_volumes", "tiny_weights"]
