// swift-tools-version:5.9
// SegmentationKit: the Swift twin of android_demo/core (manifest, pre/post-processing, float16,
// parity metrics, accuracy check, latency statistics). Foundation only, no dependencies, so that
// `swift build` and `swift test` run with the Swift toolchain on Linux as well as on macOS, offline.
// Apple-only frameworks (CryptoKit, CoreGraphics, ImageIO) are used behind `#if canImport`.
// The runners (Core ML, ExecuTorch) are in ../SegmentationRuntimes, which the demo app uses.
import PackageDescription

let package = Package(
    name: "SegmentationKit",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "SegmentationKit", targets: ["SegmentationKit"]),
    ],
    targets: [
        .target(name: "SegmentationKit"),
        .testTarget(name: "SegmentationKitTests", dependencies: ["SegmentationKit"]),
    ]
)
