"""The benchmark's pieces: the training recipe every method shares (:mod:`.recipe`)."""
