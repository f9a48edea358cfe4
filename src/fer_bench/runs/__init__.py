"""Run folders: their files and lifecycle (`artifacts`), one experiment end to end (`runner`), ensembles
of finished runs (`ensemble`) and cross-dataset tests of a run (`crossdata`)."""
