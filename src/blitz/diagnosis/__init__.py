"""What ``blitz doctor`` (and ``blitz.doctor()``) finds wrong in a dataset before it costs a
training run: leakage across the sets, copies, unreadable and odd files, imbalance, likely
label errors. (Not named ``blitz.doctor``: a subpackage of that name would replace the
function ``blitz.doctor`` as an attribute of ``blitz`` once imported.)"""
