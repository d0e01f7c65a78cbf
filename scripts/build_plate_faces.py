"""Rebuild the shipped plate faces (src/ksrnet/synth/faces/*.ttf) from their stroke definitions
in ksrnet.synth.plate_faces. Needs fontTools (pip install fonttools); rendering does not.

Usage: python scripts/build_plate_faces.py
"""

from ksrnet.synth.plate_faces import FACES, build_face

if __name__ == "__main__":
    for face in FACES:
        print(f"{face.family}: {build_face(face)}")
