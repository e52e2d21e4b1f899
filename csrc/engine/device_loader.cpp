// Loads the CUDA backend (libhalcdl_cuda.so) on first use with dlopen, so that _core itself
// never depends on CUDA: a CUDA-enabled build imports and runs on the CPU without a driver.
// A failed load is reported with the HALCON code of the library that is missing.
#include <dlfcn.h>

#include <mutex>
#include <string>

#include "core/error.h"
#include "engine/device.h"

namespace halcdl {

namespace {
std::mutex g_mu;
std::string g_path;            // empty: this build has no CUDA backend
const CudaApi* g_api = nullptr;
int g_fail_code = 0;           // a failed load is remembered (dlopen would fail the same way)
std::string g_fail_msg;

// dlerror names the library that is missing ("libcudnn.so.9: cannot open shared object
// file") or, for a too old one, the symbol it lacks ("...: undefined symbol: cudnnFoo").
int code_for(const std::string& why) {
  auto has = [&](const char* s) { return why.find(s) != std::string::npos; };
  if (has("libcudnn") || has("undefined symbol: cudnn")) return kErrCudnn;
  if (has("libcublas") || has("undefined symbol: cublas")) return kErrCublas;
  return kErrCuda;
}
std::string hint_for(int code, const std::string& why, const std::string& path) {
  if (code == kErrCudnn) return " (cuDNN 9 is missing or too old: pip install -U nvidia-cudnn-cu13)";
  if (code == kErrCublas) return " (cuBLAS 13 is missing or too old: pip install -U nvidia-cublas)";
  if (why.rfind(path + ": cannot open", 0) == 0) return " (the library itself is missing: reinstall halcdl)";
  return " (the CUDA runtime or driver is missing or too old)";
}
}  // namespace

void set_cuda_library_path(const std::string& path) {
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_api) return;  // already loaded: keep it
  g_path = path;
  g_fail_code = 0;
  g_fail_msg.clear();
}

bool cuda_backend_built() {
  std::lock_guard<std::mutex> lk(g_mu);
  return !g_path.empty();
}

const CudaApi& cuda_api() {
  std::lock_guard<std::mutex> lk(g_mu);
  if (g_api) return *g_api;
  HALCDL_CHECK(!g_path.empty(), kErrRuntimeUnsupported,
               "runtime 'gpu': this build of halcdl has no CUDA backend (reinstall with the GPU install "
               "command from the README)");
  if (g_fail_code) HALCDL_THROW(g_fail_code, g_fail_msg);
  void* h = dlopen(g_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    std::string why = e ? e : "unknown dlopen error";
    g_fail_code = code_for(why);
    g_fail_msg = std::string("runtime 'gpu': cannot load the CUDA backend: ") + why +
                 hint_for(g_fail_code, why, g_path);
    HALCDL_THROW(g_fail_code, g_fail_msg);
  }
  using Fn = const CudaApi* (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(h, "halcdl_cuda_api"));
  const CudaApi* api = fn ? fn() : nullptr;
  if (!api || api->abi_version != kCudaAbiVersion) {
    dlclose(h);
    g_fail_code = kErrCuda;
    g_fail_msg = "runtime 'gpu': " + g_path + " is not a matching halcdl CUDA backend (reinstall halcdl)";
    HALCDL_THROW(g_fail_code, g_fail_msg);
  }
  g_api = api;  // the library stays loaded for the life of the process
  return *g_api;
}

}  // namespace halcdl
