"""Which target a negation command scores against (images or the text gap), from its flags alone.

Free of torch and numpy, so a contradiction in the flags is answered before anything heavy loads.
"""

from __future__ import annotations

import os

from interp.errors import ClipInterpError

IMAGE, TEXT = "image", "text"
TARGET_HELP = (
    "pass --images DIR (a folder holding the Visual7W images VALSE existence uses), "
    "--image-embeddings FILE (precomputed image embeddings of the same CLIP model), or --target text "
    "(no images: the N-versus-A text gap; accuracy and segments are then undefined)"
)


def check_target(images: str | None, image_embeddings: str | None, target: str | None,
                 segment: str | None = None) -> str:
    """``"image"`` or ``"text"`` from the target flags; contradictions are refused before any work."""
    if images and image_embeddings:
        raise ClipInterpError("--images and --image-embeddings both given: pass one of them")
    has_images = bool(images or image_embeddings)
    if target == TEXT and has_images:
        raise ClipInterpError("--target text ignores images, but images were given: drop --images/--image-embeddings or --target text")
    if not has_images and target != TEXT:
        raise ClipInterpError(f"no target: {TARGET_HELP}")
    if segment and segment != "all" and not has_images:
        raise ClipInterpError(
            f"--segment {segment} needs images: segments come from the image score d = S(caption) - S(foil); "
            "pass --images DIR or --image-embeddings FILE, or drop --segment"
        )
    if images and not os.path.isdir(images):
        raise ClipInterpError(f"--images {images} is not a folder: pass the folder holding the images, or --target text")
    return IMAGE if has_images else TEXT
