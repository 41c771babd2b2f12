"""Settings and presets; imports nothing of blitz but blitz.errors."""
