"""Process supervision: process reward models trained on step marks, and step scores read in one forward pass."""
