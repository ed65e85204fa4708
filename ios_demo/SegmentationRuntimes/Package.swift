// swift-tools-version:5.9
// SegmentationRuntimes: the runners the demo app uses, on top of the dependency-free SegmentationKit.
//   SegmentationCoreML      an .mlpackage through Core ML (Apple platforms).
//   SegmentationExecuTorch  a .pte through ExecuTorch's SwiftPM package.
// Kept apart from SegmentationKit so that testing the core neither fetches nor links ExecuTorch.
import PackageDescription

// ExecuTorch publishes one SwiftPM branch per release, "swiftpm-<version>". The newest release branch
// we could verify in pytorch/executorch is swiftpm-1.4.1 (snapshot of 2026-08-22: swiftpm-1.4.0,
// swiftpm-1.4.1 and nightly swiftpm-1.5.0.<date> branches; no swiftpm-1.5.x release branch yet).
// The Python side exports with executorch 1.5.1: when `git ls-remote https://github.com/pytorch/executorch
// refs/heads/swiftpm-1.5.1` answers, use that, so that the runtime is not older than the exporter
// (the iOS workflow checks that this branch exists before it builds).
let executorchBranch = "swiftpm-1.4.1"

let package = Package(
    name: "SegmentationRuntimes",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "SegmentationCoreML", targets: ["SegmentationCoreML"]),
        .library(name: "SegmentationExecuTorch", targets: ["SegmentationExecuTorch"]),
    ],
    dependencies: [
        .package(path: "../SegmentationKit"),
        .package(url: "https://github.com/pytorch/executorch", branch: executorchBranch),
    ],
    targets: [
        .target(name: "SegmentationCoreML", dependencies: ["SegmentationKit"]),
        .target(
            name: "SegmentationExecuTorch",
            dependencies: [
                "SegmentationKit",
                .product(name: "executorch", package: "executorch"),
                .product(name: "backend_xnnpack", package: "executorch"),
                .product(name: "backend_coreml", package: "executorch"),
                .product(name: "kernels_optimized", package: "executorch"),
                .product(name: "kernels_quantized", package: "executorch"),
            ]
        ),
    ]
)
