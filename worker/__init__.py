"""The worker side: the sync task, the transform (mapping), dead letters."""
