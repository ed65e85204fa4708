// API stub of the Android platform (compileSdk 35), for compile checks only: the members the
// app files compiled by tests/test_android_app_compiles.py use, with the kinds and signatures of
// the Android API reference for level 35 (developer.android.com/reference). Bodies throw, as in
// the SDK's own android.jar. No nullability annotations, so Kotlin sees platform types, as it
// does for these members of android.jar.
package android.graphics;

public class BitmapFactory {
    public BitmapFactory() { throw new RuntimeException("Stub!"); }

    public static class Options {
        public Options() { throw new RuntimeException("Stub!"); }
        public Bitmap.Config inPreferredConfig;
        public boolean inScaled;
        public boolean inPremultiplied;
    }

    public static Bitmap decodeByteArray(byte[] data, int offset, int length, Options opts) { throw new RuntimeException("Stub!"); }
    public static Bitmap decodeByteArray(byte[] data, int offset, int length) { throw new RuntimeException("Stub!"); }
}
