// The CPU emulator's scheduler and collectives (model and limits: cuda_emu.h).
#include "emu/cuda_emu.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <vector>

namespace fastlm {
namespace emu {
namespace {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 256 << 10;        // per CUDA thread (fiber)
constexpr size_t kDefaultSmem = 48 << 10;        // without cudaFuncSetAttribute
constexpr size_t kMaxSmem = 227 << 10;           // sm_90 opt-in limit per block
constexpr size_t kCanaryBytes = 4096;            // after the block's dynamic shared memory
constexpr unsigned char kPoison = 0xFF, kCanary = 0xA5;

struct Abort {};  // unwinds a fiber once the block has failed

struct Copy {
  unsigned char* dst;
  const unsigned char* src;
  bool valid;
};

// What a warpgroup's product read from shared memory when it was issued (a hash of every operand
// element), checked against what it reads when the first thread's wait_group lands it.
struct IssueSnapshot {
  uint64_t hash = 0;
  bool checked = false;
};

// One in-flight wgmma as one thread sees it: its accumulator registers, its two rows of A when A
// comes from registers, the descriptors (shared memory is read when the product lands).
struct Mma {
  float* d;
  int n;
  bool reg_a, scale_d, trans_a, trans_b, bf16;
  float a_rows[2][16];
  uint64_t desc_a, desc_b;
  const uint32_t* a_regs;  // this thread's A registers, which must hold a_held until the product
  uint32_t a_held[4];      // lands (the hardware reads them while it runs)
  std::shared_ptr<IssueSnapshot> snapshot;  // shared by the warpgroup's 128 threads
};

struct Fiber {
  ucontext_t ctx;
  unsigned char* stack = nullptr;
  uint3 tid{0, 0, 0};
  int linear = 0, lane = 0, warp = 0;
  bool done = false;
  const char* waiting = nullptr;          // what it waits at (deadlock report)
  std::vector<std::vector<Copy>> groups;  // committed cp.async groups, oldest first
  std::vector<Copy> open;                 // issued since the last commit
  bool wg_fenced = false;                       // a wgmma.fence since the last wait_group
  std::vector<std::vector<Mma>> wg_groups;      // committed wgmma groups, oldest first
  std::vector<Mma> wg_open;                     // issued since the last commit
  std::map<float*, std::vector<float>> wg_acc;  // in-flight accumulators' true values
  std::vector<size_t> landed;  // 16-byte chunks its cp.async copies (and marked stores) wrote
};

// A warpgroup collective's deposits (wgmma), in buffers alternating as WarpState's.
struct GroupSlot {
  uint32_t a[4];
  uint64_t desc_a, desc_b;
  int n, flags;
};
struct WarpgroupState {
  int arrived = 0;
  uint64_t gen = 0;
  GroupSlot in[2][128];
  std::shared_ptr<IssueSnapshot> snapshot[2];  // the product issued in generation gen
};

struct WarpState {
  int live = 0, arrived = 0;
  uint64_t gen = 0;  // completed collectives; slot buffers alternate with its parity
  const char* kind = nullptr;
  uint32_t in[2][kWarpSize][8];
  const void* addr[2][kWarpSize];
};

struct State {
  ucontext_t sched;
  std::vector<Fiber> fibers;
  std::vector<WarpState> warps;
  std::vector<WarpgroupState> groups;  // warpgroups (4 warps), for wgmma
  Fiber* cur = nullptr;
  int live = 0, arrived = 0;
  uint64_t block_gen = 0;
  const char* barrier_file = nullptr;  // the __syncthreads the block's waiting threads are at
  int barrier_line = 0;
  enum class Copies { kLazy, kEager, kMixed } copies = Copies::kMixed;
  bool swapped_k = false, swapped_mn = false;  // set_wgmma_reading
  std::mt19937_64 rng;
  bool progress = false, abort = false;
  std::string error;
  uint3 block{0, 0, 0};
  dim3 block_dim, grid_dim;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> smem;  // dynamic shared memory + canary
  // Per 16-byte chunk of shared memory: 0, or 1 + the thread whose cp.async (or marked store)
  // wrote it and who has not run fence.proxy.async since (wgmma, the async proxy, must not read
  // it).
  std::vector<int> async_unfenced;
  size_t smem_size = 0;
  uint64_t seed = 1;
  std::map<const void*, int> max_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize
  std::vector<unsigned char*> stacks;
  std::vector<std::pair<uint64_t, uint64_t>> global;  // set_global_regions (empty: unchecked)
};

State& st() {
  static State s;
  static bool init = [] {
    if (const char* e = std::getenv("FASTLM_EMU_SEED")) s.seed = std::strtoull(e, nullptr, 10);
    return true;
  }();
  (void)init;
  return s;
}

cudaError_t g_last = cudaSuccess;
std::string g_last_msg;

std::string where() {
  State& s = st();
  std::string w = "block (" + std::to_string(s.block.x) + "," + std::to_string(s.block.y) + "," +
                  std::to_string(s.block.z) + ")";
  if (s.cur)
    w += " thread " + std::to_string(s.cur->linear) + " (warp " + std::to_string(s.cur->warp) +
         ", lane " + std::to_string(s.cur->lane) + ")";
  return w;
}

[[noreturn]] void fail(const std::string& msg) {
  State& s = st();
  if (s.error.empty()) s.error = msg + " at " + where();
  s.abort = true;
  throw Abort{};
}

void yield() {
  State& s = st();
  Fiber* f = s.cur;
  swapcontext(&f->ctx, &s.sched);
  if (s.abort) throw Abort{};
}

bool in_smem(const void* p, size_t bytes) {
  State& s = st();
  auto* c = static_cast<const unsigned char*>(p);
  return c >= s.smem.data() && c + bytes <= s.smem.data() + s.smem_size;
}

// Chunk `chunk` of shared memory written by the calling thread through the generic proxy: wgmma
// may not read it before that thread's fence.proxy.async.
void mark_unfenced(size_t chunk) {
  State& s = st();
  s.async_unfenced[chunk] = s.cur->linear + 1;
  s.cur->landed.push_back(chunk);
}

// Lands the calling thread's copies.
void complete(std::vector<Copy>& copies) {
  State& s = st();
  for (const Copy& c : copies) {
    if (c.valid)
      std::memcpy(c.dst, c.src, 16);
    else
      std::memset(c.dst, 0, 16);
    mark_unfenced(static_cast<size_t>(c.dst - s.smem.data()) / 16);
  }
  copies.clear();
}

// Warp collective: every lane deposits its inputs in the slot buffer of this collective, the
// last lane to arrive releases the warp, then each lane computes its own result from all slots.
// Buffers alternate by generation, so a fast lane's next collective cannot overwrite slots a
// slow lane still has to read (the next collective needs the slow lane to arrive first).
template <class Fill, class Compute>
void collective(const char* kind, Fill fill, Compute compute) {
  State& s = st();
  Fiber* f = s.cur;
  WarpState& w = s.warps[f->warp];
  if (w.live != kWarpSize)
    fail(std::string(kind) + " with " + std::to_string(kWarpSize - w.live) +
         " lanes of the warp exited or missing (full-warp collectives only)");
  if (w.arrived == 0)
    w.kind = kind;
  else if (w.kind != kind)
    fail(std::string("divergent warp collective: ") + kind + " while other lanes are at " +
         w.kind);
  const uint64_t g = w.gen;
  const int buf = static_cast<int>(g & 1);
  fill(w.in[buf][f->lane], w.addr[buf][f->lane]);
  s.progress = true;
  if (++w.arrived == kWarpSize) {
    w.arrived = 0;
    ++w.gen;
  }
  f->waiting = kind;
  while (w.gen == g) yield();
  f->waiting = nullptr;
  compute(w.in[buf], w.addr[buf], f->lane);
}

void release_block_if_complete() {
  State& s = st();
  if (s.arrived > 0 && s.arrived == s.live) {
    s.arrived = 0;
    ++s.block_gen;
    s.progress = true;
  }
}

void fiber_main() {
  State& s = st();
  Fiber* f = s.cur;
  try {
    (*s.body)();
    for (auto& grp : f->groups) complete(grp);  // copies in flight land eventually
    complete(f->open);
    if (!f->wg_groups.empty() || !f->wg_open.empty())
      fail("thread ended with wgmma products in flight (no wgmma.wait_group covering them)");
  } catch (const Abort&) {
  } catch (const std::exception& e) {
    if (s.error.empty()) s.error = std::string(e.what()) + " at " + where();
    s.abort = true;
  }
  f->groups.clear();
  if (s.arrived > 0 && !s.abort) {
    s.error = "thread exited while others wait at __syncthreads (" +
              std::string(s.barrier_file) + ":" + std::to_string(s.barrier_line) +
              "): divergent barrier at " + where();
    s.abort = true;
  }
  f->done = true;
  --s.live;
  --s.warps[f->warp].live;
  s.progress = true;
  if (!s.abort) release_block_if_complete();
  // returning resumes the scheduler (uc_link)
}

unsigned char* stack_for(size_t i) {
  State& s = st();
  while (s.stacks.size() <= i) {
    size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("cuda emulator: cannot map a fiber stack");
    mprotect(m, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
    s.stacks.push_back(static_cast<unsigned char*>(m) + page);
  }
  return s.stacks[i];
}

std::string deadlock_report() {
  State& s = st();
  std::map<std::string, int> at;
  for (const Fiber& f : s.fibers)
    if (!f.done) ++at[f.waiting ? f.waiting : "?"];
  std::string r = "deadlock: threads wait at different barriers/collectives (";
  bool first = true;
  for (auto& [k, n] : at) {
    r += (first ? "" : ", ") + std::to_string(n) + " at " + k;
    first = false;
  }
  return r + ")";
}

// Runs one block to completion; returns false (with s.error set) on failure.
bool run_block(int nthreads) {
  State& s = st();
  s.fibers.assign(nthreads, Fiber{});
  s.warps.assign((nthreads + kWarpSize - 1) / kWarpSize, WarpState{});
  s.groups.assign((nthreads + 127) / 128, WarpgroupState{});
  s.live = nthreads;
  s.arrived = 0;
  for (int i = 0; i < nthreads; ++i) {
    Fiber& f = s.fibers[i];
    f.linear = i;
    f.tid = {static_cast<unsigned>(i) % s.block_dim.x,
             static_cast<unsigned>(i) / s.block_dim.x % s.block_dim.y,
             static_cast<unsigned>(i) / (s.block_dim.x * s.block_dim.y)};
    f.lane = i % kWarpSize;
    f.warp = i / kWarpSize;
    ++s.warps[f.warp].live;
    f.stack = stack_for(i);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &s.sched;
    makecontext(&f.ctx, fiber_main, 0);
  }
  // Rounds: the warps in a shuffled order; each warp runs its lanes (shuffled) once, or, on a
  // coin flip, again and again (alone or with its warpgroup) until it blocks or ends. The deep
  // runs let one warp get far ahead of the others (a missing barrier then shows), the single
  // rounds keep warps interleaved. Seed 0: index order, single rounds.
  const int nwarps = static_cast<int>(s.warps.size());
  std::vector<int> warp_order(nwarps);
  std::vector<std::vector<int>> lanes(nwarps);
  for (int w = 0; w < nwarps; ++w) {
    warp_order[w] = w;
    for (int i = w * kWarpSize; i < std::min(nthreads, (w + 1) * kWarpSize); ++i)
      lanes[w].push_back(i);
  }
  std::mt19937_64& rng = s.rng;
  rng.seed(s.seed ^ (uint64_t(s.block.x) << 20) ^ (uint64_t(s.block.y) << 40) ^
           (uint64_t(s.block.z) << 52));
  while (s.live > 0) {
    bool any = false;
    if (s.seed) std::shuffle(warp_order.begin(), warp_order.end(), rng);
    for (int w : warp_order) {
      const uint64_t coin = s.seed ? rng() : 0;
      const bool deep = coin & 1;
      // Half the deep runs take the warp's whole warpgroup (4 warps), so that one warpgroup can
      // pass many wgmma collectives while another stands still (a missing barrier between
      // warpgroups then shows).
      const int w_lo = deep && (coin & 2) ? w / 4 * 4 : w;
      const int w_hi = deep && (coin & 2) ? std::min(nwarps, w_lo + 4) : w + 1;
      bool moved;
      do {
        s.progress = false;
        for (int ww = w_lo; ww < w_hi; ++ww) {
          if (s.seed) std::shuffle(lanes[ww].begin(), lanes[ww].end(), rng);
          for (int i : lanes[ww]) {
            Fiber& f = s.fibers[i];
            if (f.done) continue;
            s.cur = &f;
            swapcontext(&s.sched, &f.ctx);
            s.cur = nullptr;
          }
        }
        moved = s.progress;
        any = any || moved;
      } while (deep && moved && !s.abort);
    }
    if (!any && s.live > 0 && !s.abort) {
      s.error = deadlock_report() + " at " + where();  // the scheduler: no current thread
      s.abort = true;  // the next round unwinds every fiber
    }
  }
  if (!s.abort) {
    for (size_t i = s.smem_size; i < s.smem.size(); ++i)
      if (s.smem[i] != kCanary) {
        s.error = "dynamic shared memory written past its " + std::to_string(s.smem_size) +
                  " bytes (offset " + std::to_string(i) + ") in " + where();
        s.abort = true;
        break;
      }
  }
  return !s.abort;
}

void set_error(cudaError_t e, const std::string& msg) {
  g_last = e;
  g_last_msg = "cuda emulator: " + msg;
}

}  // namespace

uint3 thread_idx() { return st().cur->tid; }
uint3 block_idx() { return st().block; }
dim3 block_dim() { return st().block_dim; }
dim3 grid_dim() { return st().grid_dim; }
unsigned char* dynamic_smem() { return st().smem.data(); }

void sync_block(const char* file, int line) {
  State& s = st();
  Fiber* f = s.cur;
  if (s.arrived == 0) {
    s.barrier_file = file;
    s.barrier_line = line;
  } else if (s.barrier_line != line || std::strcmp(s.barrier_file, file) != 0) {
    fail("divergent __syncthreads: line " + std::to_string(line) + " while other threads wait at " +
         std::string(s.barrier_file) + ":" + std::to_string(s.barrier_line));
  }
  if (s.warps[f->warp].arrived > 0)
    fail(std::string("__syncthreads while other lanes of the warp are at ") +
         s.warps[f->warp].kind);
  if (s.groups[f->warp / 4].arrived > 0)
    fail("__syncthreads while other threads of the warpgroup are at a wgmma");
  if (s.live < static_cast<int>(s.fibers.size()))
    fail("__syncthreads after " + std::to_string(s.fibers.size() - s.live) +
         " threads of the block exited (divergent barrier)");
  const uint64_t g = s.block_gen;
  ++s.arrived;
  s.progress = true;
  release_block_if_complete();
  f->waiting = "__syncthreads";
  while (s.block_gen == g) yield();
  f->waiting = nullptr;
}

uint32_t shfl_xor(uint32_t v, int lane_mask, unsigned mask) {
  if (mask != 0xffffffffu) fail("__shfl_xor_sync with a partial mask (not modelled)");
  uint32_t out = 0;
  collective(
      "__shfl_xor_sync", [&](uint32_t* in, const void*&) { in[0] = v; },
      [&](uint32_t (*in)[8], const void**, int lane) {
        out = in[(lane ^ lane_mask) & (kWarpSize - 1)][0];
      });
  return out;
}

void ldmatrix_x4(uint32_t* r, const void* p, bool trans) {
  if (!in_smem(p, 16)) fail("ldmatrix address outside the block's dynamic shared memory");
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("ldmatrix row address not 16-byte aligned");
  collective(
      trans ? "ldmatrix.trans" : "ldmatrix", [&](uint32_t*, const void*& a) { a = p; },
      [&](uint32_t (*)[8], const void** addr, int lane) {
        for (int m = 0; m < 4; ++m) {
          if (!trans) {
            r[m] = static_cast<const uint32_t*>(addr[8 * m + lane / 4])[lane % 4];
          } else {
            uint16_t lo = static_cast<const uint16_t*>(addr[8 * m + 2 * (lane % 4)])[lane / 4];
            uint16_t hi = static_cast<const uint16_t*>(addr[8 * m + 2 * (lane % 4) + 1])[lane / 4];
            r[m] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
          }
        }
      });
}

void cp_async16(void* smem, const void* gmem, bool valid) {
  if (!in_smem(smem, 16)) fail("cp.async destination outside the block's dynamic shared memory");
  if (reinterpret_cast<uintptr_t>(smem) % 16 != 0 || reinterpret_cast<uintptr_t>(gmem) % 16 != 0)
    fail("cp.async 16-byte copy with a misaligned address");
  if (valid) check_global(gmem, 16, "cp.async source");
  State& s = st();
  std::vector<Copy> copy{
      {static_cast<unsigned char*>(smem), static_cast<const unsigned char*>(gmem), valid}};
  if (s.copies == State::Copies::kEager || (s.copies == State::Copies::kMixed && (s.rng() & 1)))
    complete(copy);  // lands at issue
  else
    s.cur->open.push_back(copy[0]);  // lands at the wait_group that covers it
}

void cp_async_commit() {
  Fiber* f = st().cur;
  f->groups.push_back(std::move(f->open));
  f->open.clear();
}

void cp_async_wait(int n) {
  Fiber* f = st().cur;
  while (static_cast<int>(f->groups.size()) > n) {
    complete(f->groups.front());
    f->groups.erase(f->groups.begin());
  }
}

void mma16816(float* c, const uint32_t* a, const uint32_t* b, bool bf16) {
  collective(
      bf16 ? "mma.m16n8k16.bf16" : "mma.m16n8k16.f16",
      [&](uint32_t* in, const void*&) {
        for (int i = 0; i < 4; ++i) in[i] = a[i];
        in[4] = b[0];
        in[5] = b[1];
      },
      [&](uint32_t (*in)[8], const void**, int lane) {
        auto val = [&](uint32_t reg, int hi) {
          uint16_t h = static_cast<uint16_t>(hi ? reg >> 16 : reg & 0xffffu);
          return bf16 ? bf16_to_float(h) : half_to_float(h);
        };
        // Fragment layout: cuda_common.cuh (mma16816). A[r][k], B[k][n] of the whole warp:
        auto A = [&](int r, int k) {
          return val(in[(r % 8) * 4 + (k % 8) / 2][r / 8 + 2 * (k / 8)], k % 2);
        };
        auto B = [&](int k, int n) { return val(in[n * 4 + (k % 8) / 2][4 + k / 8], k % 2); };
        const int g = lane / 4, t = lane % 4;
        for (int e = 0; e < 4; ++e) {
          int row = g + 8 * (e / 2), col = 2 * t + (e % 2);
          float acc = 0.f;
          for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
          c[e] += acc;
        }
      });
}

uint32_t smem_address(const void* p) {
  if (!in_smem(p, 1)) fail("shared-memory address outside the block's dynamic shared memory");
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - st().smem.data());
}

void wgmma_fence() { st().cur->wg_fenced = true; }

void fence_proxy_async() {
  State& s = st();
  Fiber* f = s.cur;
  for (size_t chunk : f->landed)
    if (s.async_unfenced[chunk] == f->linear + 1) s.async_unfenced[chunk] = 0;
  f->landed.clear();
}

void mark_store_for_wgmma(const void* p, size_t bytes) {
  State& s = st();
  if (!in_smem(p, bytes)) fail("store_for_wgmma outside the block's shared memory");
  const size_t first = static_cast<size_t>(static_cast<const unsigned char*>(p) - s.smem.data());
  for (size_t chunk = first / 16; chunk <= (first + bytes - 1) / 16; ++chunk) mark_unfenced(chunk);
}

void wgmma_commit() {
  Fiber* f = st().cur;
  f->wg_groups.push_back(std::move(f->wg_open));
  f->wg_open.clear();
}

namespace {

// Element (mn, k) of a no-swizzle descriptor operand (wgmma.cuh): K-major at
// (mn % 8) * 16 + (mn / 8) * SBO + (k % 8) * 2 + (k / 8) * LBO bytes from the start, MN-major at
// (mn % 8) * 2 + (mn / 8) * SBO + (k % 8) * 16 + (k / 8) * LBO.
float desc_element(uint64_t desc, int mn, int k, bool mn_major, bool bf16) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t field16 = static_cast<uint32_t>((desc >> 16) & 0x3FFF) << 4;
  const uint32_t field32 = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
  const bool swapped = mn_major ? st().swapped_mn : st().swapped_k;
  const uint32_t lbo = swapped ? field32 : field16, sbo = swapped ? field16 : field32;
  if ((desc >> 62) != 0 || ((desc >> 49) & 7) != 0)
    fail("wgmma descriptor with a swizzle or base offset (the emulator models no-swizzle only)");
  const uint32_t mn_off = mn_major ? (mn % 8) * 2 + (mn / 8) * sbo : (mn % 8) * 16 + (mn / 8) * sbo;
  const uint32_t k_off = mn_major ? (k % 8) * 16 + (k / 8) * lbo : (k % 8) * 2 + (k / 8) * lbo;
  const uint32_t off = start + mn_off + k_off;
  State& s = st();
  if (off + 2 > s.smem_size)
    fail("wgmma operand element (" + std::to_string(mn) + ", " + std::to_string(k) +
         ") at shared offset " + std::to_string(off) + ", past the block's " +
         std::to_string(s.smem_size) + " bytes");
  uint16_t h;
  if (const int writer = s.async_unfenced[off / 16])
    fail("wgmma reads shared memory (offset " + std::to_string(off) + ") that a cp.async or " +
         "store of thread " + std::to_string(writer - 1) +
         " wrote, with no fence.proxy.async by that thread since");
  std::memcpy(&h, s.smem.data() + off, 2);
  return bf16 ? bf16_to_float(h) : half_to_float(h);
}

// A hash of every shared-memory element a product reads: A (64 x 16) unless it comes from
// registers, and B (n x 16). Reading checks each element as the product does (inside shared
// memory, fenced for the async proxy).
uint64_t operand_hash(uint64_t desc_a, uint64_t desc_b, int n, bool reg_a, bool trans_a,
                      bool trans_b, bool bf16) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the elements' float bits
  auto add = [&](float x) {
    h ^= f2u(x);
    h *= 1099511628211ull;
  };
  for (int k = 0; k < 16; ++k) {
    if (!reg_a)
      for (int r = 0; r < 64; ++r) add(desc_element(desc_a, r, k, trans_a, bf16));
    for (int c = 0; c < n; ++c) add(desc_element(desc_b, c, k, trans_b, bf16));
  }
  return h;
}

// Lands one product on this thread's accumulator values acc (n / 2 of them).
void land(const Mma& m, std::vector<float>& acc) {
  const Fiber* f = st().cur;
  if (m.reg_a && std::memcmp(m.a_regs, m.a_held, sizeof(m.a_held)) != 0)
    fail("wgmma A registers changed while the product was in flight (before the wait_group "
         "covering it)");
  // The hardware reads the shared operands at some time between the issue and the wait: they
  // must not change in between (an operand written after the issue, by a copy or a store that
  // a missing wait or barrier let come late, or overwritten while the product is in flight).
  if (!m.snapshot->checked) {
    m.snapshot->checked = true;
    if (operand_hash(m.desc_a, m.desc_b, m.n, m.reg_a, m.trans_a, m.trans_b, m.bf16) !=
        m.snapshot->hash)
      fail("shared memory read by a wgmma changed between its issue and the wait_group that "
           "lands it (an operand written after the issue, or overwritten in flight)");
  }
  const int w = f->warp % 4, g = f->lane / 4, t = f->lane % 4;
  for (int i = 0; i < m.n / 2; ++i) {
    const int rr = (i / 2) % 2, row = 16 * w + g + 8 * rr, col = 8 * (i / 4) + 2 * t + i % 2;
    float sum = 0.f;
    for (int k = 0; k < 16; ++k) {
      const float a =
          m.reg_a ? m.a_rows[rr][k] : desc_element(m.desc_a, row, k, m.trans_a, m.bf16);
      sum += a * desc_element(m.desc_b, col, k, m.trans_b, m.bf16);
    }
    acc[i] = (m.scale_d ? acc[i] : 0.f) + sum;
  }
}

}  // namespace

void wgmma_wait(int n) {
  Fiber* f = st().cur;
  while (static_cast<int>(f->wg_groups.size()) > n) {
    for (const Mma& m : f->wg_groups.front()) land(m, f->wg_acc.at(m.d));
    f->wg_groups.erase(f->wg_groups.begin());
  }
  // Accumulators no longer written by a product in flight get their values back.
  for (auto it = f->wg_acc.begin(); it != f->wg_acc.end();) {
    bool busy = false;
    for (const auto& grp : f->wg_groups)
      for (const Mma& m : grp) busy = busy || m.d == it->first;
    for (const Mma& m : f->wg_open) busy = busy || m.d == it->first;
    if (busy) {
      ++it;
      continue;
    }
    std::memcpy(it->first, it->second.data(), it->second.size() * sizeof(float));
    it = f->wg_acc.erase(it);
  }
  f->wg_fenced = false;
}

void wgmma(float* d, int n, const uint32_t* a, uint64_t desc_a, uint64_t desc_b, bool scale_d,
           bool trans_a, bool trans_b, bool bf16) {
  State& s = st();
  Fiber* f = s.cur;
  if (s.fibers.size() % 128 != 0)
    fail("wgmma in a block of " + std::to_string(s.fibers.size()) +
         " threads (warpgroups need a multiple of 128)");
  if (!f->wg_fenced) fail("wgmma.mma_async without a wgmma.fence since the last wait_group");
  WarpgroupState& wg = s.groups[f->warp / 4];
  for (int w = 0; w < 4; ++w)
    if (s.warps[(f->warp / 4) * 4 + w].live != kWarpSize)
      fail("wgmma with threads of the warpgroup exited");
  const uint64_t gen = wg.gen;
  const int buf = static_cast<int>(gen & 1), me = f->linear % 128;
  GroupSlot& slot = wg.in[buf][me];
  for (int i = 0; i < 4; ++i) slot.a[i] = a ? a[i] : 0u;
  slot.desc_a = a ? 0 : desc_a;
  slot.desc_b = desc_b;
  slot.n = n;
  slot.flags = (a ? 1 : 0) | (scale_d ? 2 : 0) | (trans_b ? 4 : 0) | (bf16 ? 8 : 0) |
               (trans_a ? 16 : 0);
  s.progress = true;
  if (++wg.arrived == 128) {  // the issue: what the operands hold now is what it may read
    auto snap = std::make_shared<IssueSnapshot>();
    snap->hash = operand_hash(desc_a, desc_b, n, a != nullptr, trans_a, trans_b, bf16);
    wg.snapshot[buf] = std::move(snap);
    wg.arrived = 0;
    ++wg.gen;
  }
  f->waiting = "wgmma";
  while (wg.gen == gen) yield();
  f->waiting = nullptr;
  const GroupSlot* in = wg.in[buf];
  for (int i = 0; i < 128; ++i)
    if (in[i].desc_a != slot.desc_a || in[i].desc_b != slot.desc_b || in[i].n != slot.n ||
        in[i].flags != slot.flags)
      fail("wgmma operands (descriptors, shape or flags) differ across the warpgroup");
  if (a && trans_a) fail("wgmma: trans-a with A in registers");
  Mma m{d, n, a != nullptr, scale_d, trans_a, trans_b, bf16, {}, desc_a, desc_b, a, {},
        wg.snapshot[buf]};
  if (a) std::memcpy(m.a_held, a, sizeof(m.a_held));
  if (a) {  // this thread's rows of A (m16n8k16 A layout per warp, cuda_common.cuh)
    const int w = f->warp % 4, g = f->lane / 4;
    for (int rr = 0; rr < 2; ++rr)
      for (int k = 0; k < 16; ++k) {
        const int r = g + 8 * rr;  // row within the warp's 16
        const uint32_t reg = in[32 * w + (r % 8) * 4 + (k % 8) / 2].a[r / 8 + 2 * (k / 8)];
        const uint16_t h = static_cast<uint16_t>(k % 2 ? reg >> 16 : reg & 0xffffu);
        m.a_rows[rr][k] = bf16 ? bf16_to_float(h) : half_to_float(h);
      }
  }
  if (!f->wg_acc.count(d)) {  // first product in flight on d: keep its values, poison d
    f->wg_acc[d].assign(d, d + n / 2);
    for (int i = 0; i < n / 2; ++i) d[i] = std::nanf("");
  }
  f->wg_open.push_back(m);
}

cudaError_t set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > kMaxSmem) {
    set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(bytes) +
                                         " bytes of dynamic shared memory > the 227 KB limit");
    return cudaErrorInvalidValue;
  }
  st().max_smem[kernel] = bytes;
  return cudaSuccess;
}

void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem,
              const std::function<void()>& body) {
  State& s = st();
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    set_error(cudaErrorInvalidValue, "invalid launch configuration: grid (" +
                                         std::to_string(grid.x) + "," + std::to_string(grid.y) +
                                         "," + std::to_string(grid.z) + "), " +
                                         std::to_string(threads) + " threads per block");
    return;
  }
  size_t allowed = kDefaultSmem;
  auto it = s.max_smem.find(kernel);
  if (it != s.max_smem.end()) allowed = std::max(allowed, static_cast<size_t>(it->second));
  if (smem > allowed) {
    set_error(cudaErrorInvalidValue,
              "launch with " + std::to_string(smem) + " bytes of dynamic shared memory, " +
                  std::to_string(allowed) + " allowed (cudaFuncSetAttribute)");
    return;
  }
  s.block_dim = block;
  s.grid_dim = grid;
  s.body = &body;
  s.smem_size = smem;
  s.smem.assign(smem + kCanaryBytes, kCanary);
  s.abort = false;
  s.error.clear();
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        s.block = {x, y, z};
        std::fill(s.smem.begin(), s.smem.begin() + smem, kPoison);
        s.async_unfenced.assign(smem / 16 + 1, 0);
        if (!run_block(static_cast<int>(threads))) {
          set_error(cudaErrorLaunchFailure, s.error);
          s.fibers.clear();
          return;
        }
      }
  s.fibers.clear();
}

void set_global_regions(const std::vector<std::pair<uint64_t, uint64_t>>& regions) {
  for (const auto& r : regions)
    if (r.first + r.second < r.first)
      throw std::invalid_argument("global region wraps around the address space");
  st().global = regions;
}

void check_global(const void* p, size_t bytes, const char* what) {
  const State& s = st();
  if (s.global.empty()) return;
  const uint64_t a = reinterpret_cast<uintptr_t>(p);
  for (const auto& r : s.global)
    if (a >= r.first && a - r.first <= r.second && bytes <= r.second - (a - r.first)) return;
  fail(std::string(what) + " of " + std::to_string(bytes) +
       " bytes outside every global tensor the test named (address " + std::to_string(a) + ")");
}

void set_seed(uint64_t seed) { st().seed = seed; }

void set_copy_timing(const std::string& mode) {
  State& s = st();
  if (mode == "lazy")
    s.copies = State::Copies::kLazy;
  else if (mode == "eager")
    s.copies = State::Copies::kEager;
  else if (mode == "mixed")
    s.copies = State::Copies::kMixed;
  else
    throw std::invalid_argument("copy timing must be lazy, eager or mixed, got '" + mode + "'");
}

void set_wgmma_reading(const std::string& mode) {
  if (mode != "isa" && mode != "swapped" && mode != "swapped-k-major" && mode != "swapped-mn-major")
    throw std::invalid_argument(
        "wgmma reading must be isa, swapped, swapped-k-major or swapped-mn-major, got '" + mode +
        "'");
  st().swapped_k = mode == "swapped" || mode == "swapped-k-major";
  st().swapped_mn = mode == "swapped" || mode == "swapped-mn-major";
}

void misaligned(const char* file, unsigned line, unsigned alignment, uintptr_t address) {
  std::string msg = "misaligned " + std::to_string(alignment) + "-byte access (address % " +
                    std::to_string(alignment) + " = " + std::to_string(address % alignment) +
                    ") at " + (file ? file : "?") + ":" + std::to_string(line);
  if (st().cur) fail(msg);  // in a kernel: the launch fails, naming block and thread
  throw std::runtime_error("cuda emulator: " + msg);
}

}  // namespace emu
}  // namespace fastlm

// Alignment of every typed load and store in the kernels. The kernel sources are compiled with
// -fsanitize=alignment (CMakeLists.txt), which calls these handlers (GCC's and Clang's UBSan ABI)
// on a misaligned access, and no UBSan runtime is linked: a 16-byte vector access at an address
// that is not a multiple of 16 faults on a GPU ("misaligned address") and must fail here too,
// where x86 would just do it.
namespace {
struct UbsanSourceLocation {
  const char* file;
  uint32_t line, column;
};
struct UbsanTypeMismatch {
  UbsanSourceLocation loc;
  const void* type;
  unsigned char log_alignment;
  unsigned char type_check_kind;
};
}  // namespace

extern "C" void __ubsan_handle_type_mismatch_v1(UbsanTypeMismatch* d, uintptr_t address) {
  const unsigned alignment = 1u << d->log_alignment;
  if (address % alignment != 0)
    fastlm::emu::misaligned(d->loc.file, d->loc.line, alignment, address);
}
extern "C" void __ubsan_handle_type_mismatch_v1_abort(UbsanTypeMismatch* d, uintptr_t address) {
  __ubsan_handle_type_mismatch_v1(d, address);
}

const char* cudaGetErrorString(cudaError_t err) {
  if (err == cudaSuccess) return "no error";
  return fastlm::emu::g_last_msg.empty() ? "cuda emulator error" : fastlm::emu::g_last_msg.c_str();
}

cudaError_t cudaGetLastError() {
  cudaError_t e = fastlm::emu::g_last;
  fastlm::emu::g_last = cudaSuccess;
  return e;
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
