"""bgtutorial."""
