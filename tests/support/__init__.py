"""Helpers shared by more than one test module (test modules import from here, not from each
other). Nothing here is a test; bench/ never imports it."""
