"""Training: the fit of one or two phases (`fit`) and the callbacks it runs (`callbacks`)."""
