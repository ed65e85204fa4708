import CoreGraphics
import Foundation
import ImageIO
import SegmentationKit
import UIKit

/// Decoding is the platform's part of preprocessing step 1: 8-bit RGB, upright (EXIF orientation applied).
enum ImageLoading {
    /// Photos larger than this (longest side) are decoded downscaled, to keep memory in check.
    static let maxSide = 2048

    /// Image file bytes (photo library) -> upright sRGB RGB. Unlike Pillow, embedded colour profiles are
    /// converted to sRGB and big photos are downscaled first, so the model input can differ slightly from
    /// `python -m espnet_mobile.predict` on the same file.
    static func decode(_ data: Data) throws -> RgbImage {
        guard let source = CGImageSourceCreateWithData(data as CFData, nil) else { throw BundleError("not an image") }
        let options: [CFString: Any] = [
            kCGImageSourceCreateThumbnailFromImageAlways: true,
            kCGImageSourceCreateThumbnailWithTransform: true, // applies the EXIF orientation
            kCGImageSourceThumbnailMaxPixelSize: maxSide,
        ]
        guard let image = CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary) else {
            throw BundleError("cannot decode the image")
        }
        return rgb(image)
    }

    /// A camera photo -> upright RGB (drawing a UIImage applies its orientation).
    static func decode(_ photo: UIImage) throws -> RgbImage {
        let format = UIGraphicsImageRendererFormat()
        format.scale = 1
        let scale = min(1, CGFloat(maxSide) / max(photo.size.width, photo.size.height))
        let size = CGSize(width: (photo.size.width * scale).rounded(), height: (photo.size.height * scale).rounded())
        let upright = UIGraphicsImageRenderer(size: size, format: format).image { _ in photo.draw(in: CGRect(origin: .zero, size: size)) }
        guard let image = upright.cgImage else { throw BundleError("cannot read the photo") }
        return rgb(image)
    }

    /// Any CGImage drawn into an 8-bit sRGB buffer; alpha is dropped, as Pillow's convert("RGB") does.
    static func rgb(_ image: CGImage) -> RgbImage {
        let w = image.width, h = image.height
        var rgba = [UInt8](repeating: 0, count: w * h * 4)
        rgba.withUnsafeMutableBytes { buf in
            let ctx = CGContext(data: buf.baseAddress, width: w, height: h, bitsPerComponent: 8, bytesPerRow: 4 * w,
                                space: CGColorSpace(name: CGColorSpace.sRGB)!,
                                bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue)!
            ctx.draw(image, in: CGRect(x: 0, y: 0, width: w, height: h))
        }
        return RgbImage.fromRgba(rgba, width: w, height: h)
    }

    static func cgImage(_ image: RgbImage) -> CGImage? {
        let data = Data(image.toRgba()) as CFData
        guard let provider = CGDataProvider(data: data) else { return nil }
        return CGImage(width: image.width, height: image.height, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: 4 * image.width,
                       space: CGColorSpace(name: CGColorSpace.sRGB)!, bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: true, intent: .defaultIntent)
    }
}
