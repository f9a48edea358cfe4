"""What a person reads across runs: the comparison of finished run folders (`compare`)."""
