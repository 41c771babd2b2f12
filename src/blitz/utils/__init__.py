"""Small tools any layer may use: signals, file locks, careful file writes."""
