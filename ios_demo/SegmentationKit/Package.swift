// swift-tools-version:5.9
// SegmentationKit: the Swift twin of android_demo/core (manifest, pre/post-processing, float16,
// parity metrics, accuracy check) plus the Core ML runner, and SegmentationKitExecuTorch with the
// ExecuTorch runner. The ExecuTorch binaries are kept out of SegmentationKit so that `swift test`
// checks the shared logic without linking them.
import PackageDescription

// Keep equal to the executorch version in pyproject.toml: the runtime must read the .pte files it writes.
let executorchBranch = "swiftpm-1.5.1"

let package = Package(
    name: "SegmentationKit",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "SegmentationKit", targets: ["SegmentationKit"]),
        .library(name: "SegmentationKitExecuTorch", targets: ["SegmentationKitExecuTorch"]),
    ],
    dependencies: [
        .package(url: "https://github.com/pytorch/executorch", branch: executorchBranch),
    ],
    targets: [
        .target(name: "SegmentationKit"),
        .target(
            name: "SegmentationKitExecuTorch",
            dependencies: [
                "SegmentationKit",
                .product(name: "executorch", package: "executorch"),
                .product(name: "backend_xnnpack", package: "executorch"),
                .product(name: "backend_coreml", package: "executorch"),
                .product(name: "kernels_optimized", package: "executorch"),
                .product(name: "kernels_quantized", package: "executorch"),
            ]
        ),
        .testTarget(name: "SegmentationKitTests", dependencies: ["SegmentationKit"]),
    ]
)
