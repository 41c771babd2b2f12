"""``blitz doctor``: what is wrong in a dataset before it costs a training run (leakage across
the sets, copies, unreadable files, odd images, imbalance, likely label errors)."""
