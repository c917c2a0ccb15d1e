"""outreach: send a personalised open letter to officials and follow what happened to each copy."""

__version__ = "0.1.0"
