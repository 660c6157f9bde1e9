// A CUDA load for the gpu tests where PyTorch is absent (tests/gpu/load.py compiles it with nvcc).
// Usage: cuda_load MEMORY_MIB SECONDS. Holds MEMORY_MIB of device memory, prints "cuda load running" once
// it is held and the first kernel ran, and keeps the SMs busy with arithmetic until killed or SECONDS passed.
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <cuda_runtime.h>

static void check(cudaError_t err, const char* what) {
    if (err != cudaSuccess) {
        std::printf("cuda load failed: %s: %s\n", what, cudaGetErrorString(err));
        std::fflush(stdout);
        std::exit(1);
    }
}

__global__ void spin(float* data, size_t n, int rounds) {
    size_t stride = static_cast<size_t>(blockDim.x) * gridDim.x;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
        float x = data[i];
        for (int r = 0; r < rounds; ++r) {
            x = fmaf(x, 0.999999f, 0.000001f);
        }
        data[i] = x;
    }
}

int main(int argc, char** argv) {
    size_t memory_mib = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 2048;
    long seconds = argc > 2 ? std::strtol(argv[2], nullptr, 10) : 300;
    void* hold = nullptr;
    check(cudaMalloc(&hold, memory_mib << 20), "cudaMalloc(hold)");
    check(cudaMemset(hold, 1, memory_mib << 20), "cudaMemset(hold)");
    const size_t n = size_t(1) << 24;
    float* work = nullptr;
    check(cudaMalloc(&work, n * sizeof(float)), "cudaMalloc(work)");
    check(cudaMemset(work, 0, n * sizeof(float)), "cudaMemset(work)");
    int sms = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), "cudaDeviceGetAttribute");
    spin<<<sms * 8, 256>>>(work, n, 64);
    check(cudaDeviceSynchronize(), "first kernel");
    std::printf("cuda load running kind=cuda held_mib=%zu sms=%d\n", memory_mib, sms);
    std::fflush(stdout);
    std::time_t end = std::time(nullptr) + seconds;
    while (std::time(nullptr) < end) {
        spin<<<sms * 8, 256>>>(work, n, 4096);
        check(cudaDeviceSynchronize(), "kernel");
    }
    return 0;
}
