"""The simulation's stand-ins for people and their data (see package.xml)."""
