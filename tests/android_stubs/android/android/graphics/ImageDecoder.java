// API stub of the Android platform (compileSdk 35), for compile checks only: the members the
// app files compiled by tests/test_android_app_compiles.py use, with the kinds and signatures of
// the Android API reference for level 35 (developer.android.com/reference). Bodies throw, as in
// the SDK's own android.jar. No nullability annotations, so Kotlin sees platform types, as it
// does for these members of android.jar.
package android.graphics;

import android.content.ContentResolver;
import android.net.Uri;
import android.util.Size;
import java.io.IOException;
import java.nio.ByteBuffer;

public final class ImageDecoder implements AutoCloseable {
    private ImageDecoder() {}

    public static final int ALLOCATOR_DEFAULT = 0;
    public static final int ALLOCATOR_SOFTWARE = 1;
    public static final int ALLOCATOR_SHARED_MEMORY = 2;
    public static final int ALLOCATOR_HARDWARE = 3;

    public abstract static class Source {
        private Source() {}
    }

    public static class ImageInfo {
        private ImageInfo() {}
        public Size getSize() { throw new RuntimeException("Stub!"); }
        public String getMimeType() { throw new RuntimeException("Stub!"); }
    }

    public interface OnHeaderDecodedListener {
        void onHeaderDecoded(ImageDecoder decoder, ImageInfo info, Source source);
    }

    public static Source createSource(ContentResolver cr, Uri uri) { throw new RuntimeException("Stub!"); }
    public static Source createSource(ByteBuffer buffer) { throw new RuntimeException("Stub!"); }
    public static Source createSource(byte[] data) { throw new RuntimeException("Stub!"); }

    public static Bitmap decodeBitmap(Source src, OnHeaderDecodedListener listener) throws IOException { throw new RuntimeException("Stub!"); }
    public static Bitmap decodeBitmap(Source src) throws IOException { throw new RuntimeException("Stub!"); }

    public void setAllocator(int allocator) { throw new RuntimeException("Stub!"); }
    public int getAllocator() { throw new RuntimeException("Stub!"); }
    public void setTargetColorSpace(ColorSpace colorSpace) { throw new RuntimeException("Stub!"); }
    public void setTargetSize(int width, int height) { throw new RuntimeException("Stub!"); }
    public void close() { throw new RuntimeException("Stub!"); }
}
