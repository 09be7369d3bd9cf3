/*
 * activemm's refcount rules in Promela, for timing SPIN against `activemm explore` on the same
 * bound: 2 CPUs, 1 process fork, 1 thread, 1 kernel thread, 1 exec, no external holders, no
 * TLB flushes, no hotplug (benchmarks/explore_bench.py, bound "2cpu-1p-1t-1k-exhaustive").
 * Linux 6.17 with MMU_LAZY_TLB_REFCOUNT=y on an arch-neutral MMU. The enabled operations are
 * those of src/activemm/check/ops.py; the assertions are the sanitizer's count equations.
 * Not modelled here (the Python model has them): mm_cpumask and the CPU's loaded mm.
 *
 *   spin -a activemm.pml && gcc -O2 -DSAFETY -o pan pan.c && ./pan -m100000
 */
#define NT 7      /* idle0, idle1, init, kthreadd, and up to three forked tasks */
#define NC 2
#define NM 3      /* init_mm, and two mms (init's exec, the forked process) */
#define NONE 255
#define UNUSED 0
#define RUNNABLE 1
#define RUNNING 2
#define GONE 3

byte mm[NT], act[NT], st[NT];
bool kt[NT], ex[NT], uses[NT];
byte curr[NC];
byte users[NM], cnt[NM];
bool torn[NM], freed[NM];
byte nmm = 1, ntask = 4;
byte fp, fth, fk, nexec;
byte c, t, o, m, a, p, pm, i, j, n, k;  /* scratch, reset to 0 after every step */

inline mmdrop(x) {
  cnt[x]--;
  assert(cnt[x] < 200);
  if
  :: cnt[x] == 0 -> assert(x != 0); freed[x] = 1
  :: else
  fi
}

inline mmput(x) {
  users[x]--;
  if
  :: users[x] == 0 -> torn[x] = 1; mmdrop(x)
  :: else
  fi
}

inline check() {
  for (m : 1 .. NM - 1) {
    if
    :: freed[m] || m >= nmm -> skip
    :: else ->
      n = 0; k = 0;
      for (i : 0 .. NT - 1) {
        if
        :: st[i] != UNUSED && st[i] != GONE && mm[i] == m ->
           if :: uses[i] -> k++ :: else -> n++ fi
        :: else
        fi
      }
      for (j : 0 .. NC - 1) {
        if :: mm[curr[j]] == NONE && act[curr[j]] == m -> k++ :: else fi
      }
      assert(users[m] == n);
      assert(cnt[m] == k + (users[m] > 0 -> 1 : 0))
    fi
  }
  for (i : 0 .. NT - 1) {
    if
    :: st[i] != UNUSED && st[i] != GONE ->
       assert(mm[i] == NONE || !freed[mm[i]]);
       assert(act[i] == NONE || !freed[act[i]])
    :: else
    fi
  }
  m = 0; n = 0; k = 0; i = 0; j = 0
}

init {
  atomic {   /* boot: idle tasks lazily on init_mm; init and kthreadd runnable, no mm */
    for (i : 0 .. NT - 1) { mm[i] = NONE; act[i] = NONE }
    st[0] = RUNNING; st[1] = RUNNING; kt[0] = 1; kt[1] = 1; act[0] = 0; act[1] = 0;
    curr[0] = 0; curr[1] = 1;
    st[2] = RUNNABLE; st[3] = RUNNABLE; kt[3] = 1;
    users[0] = 2; cnt[0] = 3;
    i = 0
  }
  do
  :: atomic {  /* schedule(c, t, preempt=o): context_switch() + finish_task_switch() */
       if :: c = 0 :: c = 1 fi;
       if :: t = 0 :: t = 1 :: t = 2 :: t = 3 :: t = 4 :: t = 5 :: t = 6 fi;
       if :: o = 0 :: o = 1 fi;
       if
       :: st[t] == RUNNABLE && (t > 1 || t == c) && (o == 0 || ex[curr[c]]) ->
          p = curr[c]; a = act[p];
          curr[c] = t; st[t] = RUNNING;
          if :: ex[p] && o == 0 -> st[p] = GONE :: else -> st[p] = RUNNABLE fi;
          pm = NONE;
          if
          :: mm[t] == NONE ->                    /* to kernel: lazy */
             act[t] = a;
             if :: mm[p] != NONE -> cnt[a]++      /* user -> kernel: mmgrab_lazy_tlb */
             :: else -> act[p] = NONE             /* kernel -> kernel: hand on */
             fi
          :: else ->                             /* to user: switch_mm */
             if :: mm[p] == NONE -> pm = a; act[p] = NONE :: else fi
          fi;
          if :: pm != NONE -> mmdrop(pm) :: else fi;   /* finish_task_switch */
          check()
       :: else -> skip
       fi;
       c = 0; t = 0; o = 0; p = 0; a = 0; pm = 0
     }
  :: atomic {  /* an operation of the task running on CPU c */
       if :: c = 0 :: c = 1 fi;
       p = curr[c];
       if :: o = 0 :: o = 1 :: o = 2 :: o = 3 :: o = 4 :: o = 5 :: o = 6 :: o = 7 fi;
       if
       :: o == 0 && p > 1 && !ex[p] && mm[p] != NONE && !kt[p] && fp < 1 && ntask < NT ->
          fp++; t = ntask; ntask++; m = nmm; nmm++;            /* fork: dup_mm */
          users[m] = 1; cnt[m] = 1; mm[t] = m; act[t] = m; st[t] = RUNNABLE; check()
       :: o == 1 && p > 1 && !ex[p] && mm[p] != NONE && !kt[p] && fth < 1 && ntask < NT ->
          fth++; t = ntask; ntask++; users[mm[p]]++;            /* CLONE_VM: mmget */
          mm[t] = mm[p]; act[t] = mm[p]; st[t] = RUNNABLE; check()
       :: o == 2 && p > 1 && !ex[p] && mm[p] == NONE && kt[p] && !uses[p] && fk < 1 && ntask < NT ->
          fk++; t = ntask; ntask++; kt[t] = 1; st[t] = RUNNABLE; check()
       :: o == 3 && p > 1 && !ex[p] && !kt[p] && nexec < 1 ->  /* exec_mmap */
          nexec++; m = nmm; nmm++; users[m] = 1; cnt[m] = 1;
          a = mm[p]; pm = act[p]; mm[p] = m; act[p] = m;
          if :: a != NONE -> mmput(a) :: else -> mmdrop(pm) fi;
          check()
       :: o == 4 && p > 1 && p != 2 && !ex[p] && !uses[p] ->   /* do_exit: exit_mm */
          ex[p] = 1; a = mm[p];
          if :: a != NONE -> cnt[a]++; mm[p] = NONE; mmput(a) :: else fi;
          check()
       :: (o == 5 || o == 6) && p > 1 && !ex[p] && kt[p] && mm[p] == NONE && !uses[p] &&
          o - 4 < nmm && !freed[o - 4] && users[o - 4] > 0 ->  /* kthread_use_mm */
          m = o - 4; cnt[m]++; a = act[p]; act[p] = m; mm[p] = m; uses[p] = 1;
          mmdrop(a); check()
       :: o == 7 && p > 1 && uses[p] ->                         /* kthread_unuse_mm */
          m = mm[p]; mm[p] = NONE; uses[p] = 0; cnt[m]++; mmdrop(m); check()
       :: else -> skip
       fi;
       c = 0; t = 0; o = 0; p = 0; a = 0; pm = 0; m = 0
     }
  od
}
