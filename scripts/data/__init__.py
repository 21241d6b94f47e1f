"""Data: reading and writing volumes, datalists, MONAI transforms and dataset adapters (CT-RATE)."""
