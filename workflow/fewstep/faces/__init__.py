"""Faces: insightface detection/recognition, IR-SE50 ArcFace, and their registry entries."""
