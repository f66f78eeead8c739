"""What to encrypt: calibration, importance scorers, allocation, selection, masking, levels."""
