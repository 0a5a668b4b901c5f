"""The degradations PULSE's loss compares through: the bicubic downscale (`downscale`) and
the other operators a search can name (`operators`; docs/method.md section 6)."""
