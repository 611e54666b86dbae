"""Names of the score targets and d segments, free of torch so the commands' ``--help`` answers at once."""

TARGET_KINDS = ("image", "text")
SEGMENT_LABELS = ("incorrect", "ambiguous", "correct")
