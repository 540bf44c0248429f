"""``taskcast demo``: the command, and the sample app only it and its workers load."""
