"""Measuring PULSE against the truth: the evaluation over known faces (`evaluate`), its
metrics (`metrics`) and plots (`plots`)."""
