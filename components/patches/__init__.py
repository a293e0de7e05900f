"""Training-free attention patches (family ``patch``)."""
