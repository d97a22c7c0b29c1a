"""Data: dataset sources, report cleaning, the CheXpert-style labeler, patient split and image loading."""
