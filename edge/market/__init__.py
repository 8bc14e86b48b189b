"""The market's logic, pure: battery dispatch over known prices (``plan``). It imports
nothing of ours but the codecs (REData answers) and the errors: no I/O, no clock."""
