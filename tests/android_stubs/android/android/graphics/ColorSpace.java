// API stub of the Android platform (compileSdk 35), for compile checks only: the members the
// app files compiled by tests/test_android_app_compiles.py use, with the kinds and signatures of
// the Android API reference for level 35 (developer.android.com/reference). Bodies throw, as in
// the SDK's own android.jar. No nullability annotations, so Kotlin sees platform types, as it
// does for these members of android.jar.
package android.graphics;

public abstract class ColorSpace {
    public enum Named { SRGB, LINEAR_SRGB, EXTENDED_SRGB, LINEAR_EXTENDED_SRGB, BT709, BT2020, DCI_P3, DISPLAY_P3, NTSC_1953, SMPTE_C, ADOBE_RGB, PRO_PHOTO_RGB, ACES, ACESCG, CIE_XYZ, CIE_LAB, BT2020_HLG, BT2020_PQ }

    public static ColorSpace get(Named name) { throw new RuntimeException("Stub!"); }
}
