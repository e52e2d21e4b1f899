// Kernels that test the emulator itself (tests/test_cuda_kernels_emulated.py, test_emulator_*):
// shuffle semantics against the CUDA documentation, and misuse the emulator must report or
// expose (a missing barrier, a divergent barrier, a shuffle with exited lanes, a bad launch
// configuration). Written in CUDA and translated like kernels.cu, so the launch rewriting is
// exercised too. Each entry point returns the launch's cudaError_t (0 = success).
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace {

constexpr int kB = 128;

// Tree sum without the barrier between levels: the result depends on the schedule.
__global__ void racy_sum_kernel(const float* x, float* out) {
  __shared__ float sh[kB];
  sh[threadIdx.x] = x[blockIdx.x * kB + threadIdx.x];
  __syncthreads();
  for (int s = kB / 2; s > 0; s >>= 1)
    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
  if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}
// The same with the barriers: schedule-independent.
__global__ void tree_sum_kernel(const float* x, float* out) {
  __shared__ float sh[kB];
  sh[threadIdx.x] = x[blockIdx.x * kB + threadIdx.x];
  __syncthreads();
  for (int s = kB / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 64) __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void exited_lanes_shuffle_kernel(float* out) {
  if (threadIdx.x >= 40) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 1);
}

// out[5 * t + i]: shuffles of v = 100·t (xor/down/up/idx with `arg`, `width`), ballot.
__global__ void shuffle_kernel(int* out, int arg, int width) {
  const int t = threadIdx.x;
  const int v = 100 * t;
  out[5 * t + 0] = __shfl_xor_sync(0xffffffffu, v, arg, width);
  out[5 * t + 1] = __shfl_down_sync(0xffffffffu, v, static_cast<unsigned>(arg), width);
  out[5 * t + 2] = __shfl_up_sync(0xffffffffu, v, static_cast<unsigned>(arg), width);
  out[5 * t + 3] = __shfl_sync(0xffffffffu, v, arg, width);
  out[5 * t + 4] = static_cast<int>(__ballot_sync(0xffffffffu, (t % 3) == 0));
}

// 64-bit shuffles keep every bit (the row kernels shuffle double and int64_t).
__global__ void shuffle64_kernel(double* d, int64_t* i) {
  const int t = threadIdx.x;
  d[t] = __shfl_xor_sync(0xffffffffu, 1.0 / (t + 3), 5);
  i[t] = __shfl_xor_sync(0xffffffffu, (int64_t{1} << 40) + t, 3);
}

// Block 0 writes shared memory, every block reads it: blocks > 0 must not see block 0's data.
__global__ void stale_shared_kernel(float* out) {
  __shared__ float sh[32];
  if (blockIdx.x == 0) sh[threadIdx.x] = 1.f;
  __syncthreads();
  out[blockIdx.x * 32 + threadIdx.x] = sh[threadIdx.x];
}

// Dynamic shared memory: reverse each block's n values.
__global__ void reverse_kernel(const float* x, float* out) {
  extern __shared__ float buf[];
  const int n = blockDim.x, t = threadIdx.x;
  buf[t] = x[blockIdx.x * n + t];
  __syncthreads();
  out[blockIdx.x * n + t] = buf[n - 1 - t];
}

__global__ void oob_write_kernel(float* out, int n) {
  if (threadIdx.x == 0) out[n] = 1.f;  // one past the end
}

__global__ void index_kernel(int* out) {
  const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int nt = blockDim.x * blockDim.y * blockDim.z;
  out[b * nt + t] = b * 1000 + t;
}

std::string g_msg;

int finish() {
  const cudaError_t e = cudaGetLastError();
  g_msg = emu::last_message();
  return static_cast<int>(e);
}

}  // namespace

extern "C" {
const char* selftest_message() { return g_msg.c_str(); }
void selftest_set_schedule(int mode, uint64_t seed) { emu::set_schedule(mode, seed); }
int selftest_racy_sum(const float* x, float* out, int blocks) {
  racy_sum_kernel<<<blocks, kB>>>(x, out);
  return finish();
}
int selftest_tree_sum(const float* x, float* out, int blocks) {
  tree_sum_kernel<<<blocks, kB, 0, nullptr>>>(x, out);
  return finish();
}
int selftest_divergent_barrier(float* out) {
  divergent_barrier_kernel<<<1, kB>>>(out);
  return finish();
}
int selftest_exited_lanes_shuffle(float* out) {
  exited_lanes_shuffle_kernel<<<1, 64>>>(out);
  return finish();
}
int selftest_shuffle(int* out, int arg, int width) {
  shuffle_kernel<<<1, 64>>>(out, arg, width);
  return finish();
}
int selftest_shuffle64(double* d, int64_t* i) {
  shuffle64_kernel<<<1, 32>>>(d, i);
  return finish();
}
int selftest_stale_shared(float* out, int blocks) {
  stale_shared_kernel<<<blocks, 32>>>(out);
  return finish();
}
int selftest_reverse(const float* x, float* out, int blocks, int n) {
  reverse_kernel<<<blocks, n, n * sizeof(float)>>>(x, out);
  return finish();
}
int selftest_oob_write(float* out, int n) {
  oob_write_kernel<<<1, 32>>>(out, n);
  return finish();
}
int selftest_index(int* out, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz) {
  index_kernel<<<dim3(gx, gy, gz), dim3(bx, by, bz)>>>(out);
  return finish();
}
int selftest_bad_config(int* out) {
  index_kernel<<<1, 2048>>>(out);
  return finish();
}
}
