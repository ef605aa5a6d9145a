"""Graph passes (Graph -> Graph) and analyses (Graph -> result); no torch here."""
