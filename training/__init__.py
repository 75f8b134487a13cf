"""Training the change model on labelled tiles (see the CNN issue); nothing here yet.

``detector`` never imports this package except inside ``detector train``.
"""
