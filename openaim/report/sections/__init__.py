"""The report's sections, each a function returning document blocks (and adding the PNGs it shows to
``images``), grouped by what they report on."""
