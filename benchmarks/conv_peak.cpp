// The machine's fp32 convolution rate as oneDNN reaches it: forward-inference convolutions
// (layouts `any`, the blocked formats oneDNN picks, weights reordered once outside the timing),
// the 3x3 shapes of resnet18 at batch 16 plus a large compute-bound one. Prints one JSON line
// per shape: {"name", "gflops" (median of reps), "reps", "impl"}. Built and run by
// benchmarks/bench_peers.py (section peak); OMP_NUM_THREADS sets the threads.
//   usage: conv_peak [reps]
#include <dnnl.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;

struct Shape {
  const char* name;
  int n, c, h, w, o, k, s, p;
};

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 10;
  engine eng(engine::kind::cpu, 0);
  stream st(eng);
  const Shape shapes[] = {
      {"resnet18 conv1 7x7s2 3->64 224", 16, 3, 224, 224, 64, 7, 2, 3},
      {"resnet18 layer1 3x3 64->64 56", 16, 64, 56, 56, 64, 3, 1, 1},
      {"resnet18 layer2 3x3 128->128 28", 16, 128, 28, 28, 128, 3, 1, 1},
      {"resnet18 layer3 3x3 256->256 14", 16, 256, 14, 14, 256, 3, 1, 1},
      {"resnet18 layer4 3x3 512->512 7", 16, 512, 7, 7, 512, 3, 1, 1},
      {"large 3x3 256->256 56", 16, 256, 56, 56, 256, 3, 1, 1},
  };
  for (const Shape& sh : shapes) {
    const int oh = (sh.h + 2 * sh.p - sh.k) / sh.s + 1, ow = (sh.w + 2 * sh.p - sh.k) / sh.s + 1;
    memory::desc src({sh.n, sh.c, sh.h, sh.w}, dt::f32, tag::any), wei({sh.o, sh.c, sh.k, sh.k}, dt::f32, tag::any),
        dst({sh.n, sh.o, oh, ow}, dt::f32, tag::any);
    convolution_forward::primitive_desc pd(eng, prop_kind::forward_inference, algorithm::convolution_direct, src, wei,
                                           dst, {sh.s, sh.s}, {sh.p, sh.p}, {sh.p, sh.p});
    memory ms(pd.src_desc(), eng), mw(pd.weights_desc(), eng), md(pd.dst_desc(), eng);
    for (memory* m : {&ms, &mw}) {
      float* f = static_cast<float*>(m->get_data_handle());
      const size_t cnt = m->get_desc().get_size() / sizeof(float);
      for (size_t i = 0; i < cnt; ++i) f[i] = static_cast<float>((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    }
    convolution_forward conv(pd);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md}};
    const double flops = 2.0 * sh.n * sh.o * oh * ow * static_cast<double>(sh.c) * sh.k * sh.k;
    for (int i = 0; i < 2; ++i) conv.execute(st, args);
    st.wait();
    std::vector<double> g;
    for (int r = 0; r < reps; ++r) {
      auto t0 = std::chrono::steady_clock::now();
      conv.execute(st, args);
      st.wait();
      g.push_back(flops / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 1e9);
    }
    std::sort(g.begin(), g.end());
    std::printf("{\"name\": \"%s\", \"gflops\": %.3f, \"best_gflops\": %.3f, \"reps\": %d, \"impl\": \"%s\"}\n",
                sh.name, g[g.size() / 2], g.back(), reps, pd.impl_info_str());
  }
  return 0;
}
