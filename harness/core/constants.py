"""The domain's constants, each named once: decoder2's search, the secret's length, the sides, the outcome names."""
from __future__ import annotations

# decoder2 fits every photo to PHOTO_SIDE × PHOTO_SIDE (ImageOps.fit, LANCZOS) before anything else
PHOTO_SIDE = 400
# the SDecoder reads ROIs resized to ROI_SIDE × ROI_SIDE
ROI_SIDE = 400
# the secret's length in bits
NUM_BITS = 100
# decoder2's search rotations, in the demo's order: a BCE tie keeps the first
SEARCH_ANGLES = (0.0, 3.0, -3.0)
# the camera tilts a robustness sweep covers by default, degrees (PIL's sense: counter-clockwise)
DEFAULT_TILTS = tuple(float(t) for t in range(-5, 6))
# camera conditions beyond the tilt (harness.conditions): the pinhole focal length of the perspective condition, as a
# multiple of the photo's longer side (1.0: a 53° field of view across it), and the seed their random draws start from
PERSPECTIVE_FOCAL = 1.0
CONDITION_SEED = 0

# a bit reads 1 when its probability is at least BIT_THRESHOLD (0.5 counts as 1, as in the demo)
BIT_THRESHOLD = 0.5
# a pixel belongs to the watermarked region when its raw mask logit is above ROI_LOGIT_THRESHOLD
ROI_LOGIT_THRESHOLD = 0.0

# what a record says happened to one (model, photo, tilt)
STATUSES = ("ok", "roi_empty", "failed")
# the roles of the localizers of a run
ROLES = ("teacher", "student")
# where a record's ROI came from: the model's own mask, or the ground-truth mask's box
ROI_SOURCES = ("predicted", "oracle")
# the model name of the ground-truth-mask rows
ORACLE = "oracle"

# the largest photo (width × height) evaluated at full size: Pillow's own decompression-bomb refusal (twice its
# warning threshold of 89,478,485 pixels), e.g. 13000×13000. decoder2 fits the photo to 400×400 only after the
# camera tilt, so the tilt runs on every pixel; a larger photo is refused, not downscaled, since a downscale before
# the tilt changes what the localizer sees. Preparing one photo peaks near 23 bytes a pixel in its worker.
MAX_PHOTO_PIXELS = 2 * 89_478_485
