"""Reading mammograms, MONAI transforms, datalists and synthetic data."""
